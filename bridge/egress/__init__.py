"""Where results go: reply lists (through the ledger), the Celery result backend and the
continuation of Celery canvases. May import bridge.errors and bridge.worker.model."""
