"""pgvector in the public schema, from a SHARED app: every tenant schema then sees
the `vector` type through its search_path. In a tenant app the extension would be
created in the first tenant's schema and every later tenant would fail with
`type "vector" does not exist`. Needs a superuser (pgvector is not a trusted
extension): the embedded server's `postgres` role is one; in production a DBA may
have to run `CREATE EXTENSION vector` once."""

from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]

    operations = [VectorExtension()]
