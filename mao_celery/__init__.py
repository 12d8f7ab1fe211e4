"""MAO Orchestrator, Celery edition: run registered data collectors and detect spikes."""

__version__ = "0.1.0"
