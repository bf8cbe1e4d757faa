"""rosbag2 (MCAP) recording, replay, export to the episode store and open-loop evaluation."""
