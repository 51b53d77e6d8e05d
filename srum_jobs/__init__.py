"""srum_jobs: SRUM self-rewarding post-training, packaged as resumable jobs."""

__version__ = "0.1.0"
