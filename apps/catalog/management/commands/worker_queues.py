from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.catalog.selectors import models_enabled
from tasks.queues import CeleryQueue, llm_queue


class Command(BaseCommand):
    help = "Print the Celery queues workers should consume: one per enabled model, plus the static ones."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--llm-models", action="store_true", help="Print only the enabled model slugs")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["llm_models"]:
            for spec in models_enabled():
                self.stdout.write(spec.slug)
            return
        for queue in CeleryQueue:
            self.stdout.write(queue.value)
        for spec in models_enabled():
            self.stdout.write(llm_queue(spec.slug))
