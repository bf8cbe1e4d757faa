"""Thin rclpy nodes: they declare parameters, own QoS and translate messages to core calls."""
