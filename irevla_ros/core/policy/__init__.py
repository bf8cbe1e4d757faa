"""The actor, ROS-free: observation assembly and staleness, the episode runner, verified weight hot reload."""
