"""bridge: connect Redis/RabbitMQ/Celery queues to serverless GPU endpoints (RunPod queue API).

Parts: ``bridge.runpod`` (client library), ``bridge.emulator`` (local RunPod-compatible
server), ``bridge.worker`` (Celery workers), ``bridge.cli`` (the ``bridge`` command).
"""

__version__ = "0.1.0"
