"""tiktoken's o200k_base file as the platform installs it (see
devtools/fetch_tokenizers.py): its name in tiktoken's cache (sha1 of the blob
URL) and the SHA-256 tiktoken expects of its content."""

O200K_FILE = "fb374d419588a4632f3f557e76b4b70aebbca790"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
