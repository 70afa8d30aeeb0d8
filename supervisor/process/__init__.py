"""Process supervision: launching attempts, watching them die, killing every process of a job."""
