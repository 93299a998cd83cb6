from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


class CatalogConfig(AppConfig):
    name = "apps.catalog"
    label = "catalog"

    def ready(self) -> None:
        from .models import LLMModel
        from .selectors import catalog_cache_clear

        # This process sees an edit at once; other processes within CATALOG_CACHE_SECONDS.
        def clear(**kwargs: object) -> None:
            catalog_cache_clear()

        post_save.connect(clear, sender=LLMModel, weak=False, dispatch_uid="catalog-cache-clear-save")
        post_delete.connect(clear, sender=LLMModel, weak=False, dispatch_uid="catalog-cache-clear-delete")
