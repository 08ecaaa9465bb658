"""Where the scheduler and its runners live on a Ray cluster (client, shell and launcher agree)."""

NAMESPACE = "lorafarm"
SCHEDULER_NAME = "scheduler"
RUNNER_PREFIX = "lorafarm-runner-"
