"""The Celery app that workers, Flower and the celery CLI load with `-A tasks`."""
from celery import Celery

app = Celery("orders", include=["tasks.orders"], control="tasks.control:ControlPlane")
app.config_from_object("celeryconfig")
