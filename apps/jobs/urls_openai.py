from django.urls import path

from .openai_api import ModelDetailApi, ModelListApi, chat_completions, embeddings

urlpatterns = [
    path("chat/completions", chat_completions, name="v1-chat-completions"),
    path("embeddings", embeddings, name="v1-embeddings"),
    path("models", ModelListApi.as_view(), name="v1-models"),
    path("models/<str:model_id>", ModelDetailApi.as_view(), name="v1-model"),
]
