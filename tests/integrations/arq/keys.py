"""Where the arq tests and their worker app meet: Redis database 3 and the keys they signal with."""

REDIS_URL = "redis://127.0.0.1:6379/3"
READY_KEY = "jobtrace-test:ready:"  # + queue: the worker polls its queue
RUNNING_KEY = "jobtrace-test:running:"  # + job id: the job has started
