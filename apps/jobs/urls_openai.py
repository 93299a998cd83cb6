from django.urls import path

from .v1.catalog import ModelDetailApi, ModelListApi
from .v1.chat import chat_completions
from .v1.embeddings import embeddings

urlpatterns = [
    path("chat/completions", chat_completions, name="v1-chat-completions"),
    path("embeddings", embeddings, name="v1-embeddings"),
    path("models", ModelListApi.as_view(), name="v1-models"),
    path("models/<str:model_id>", ModelDetailApi.as_view(), name="v1-model"),
]
