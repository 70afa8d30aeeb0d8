"""The job model: the frozen spec, the job states, and how an attempt ended."""
