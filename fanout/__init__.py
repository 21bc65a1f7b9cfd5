"""Fan-out workers: Kafka post/follow events into Redis timelines, live publish, push jobs."""
