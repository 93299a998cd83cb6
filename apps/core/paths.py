"""The URL prefixes the API owns: there a request's tenant comes from its key
(apps.tenants.middleware), not its Host, and errors are the API's JSON shape
(apps.core.views), never an HTML page."""

API_PATH_PREFIXES = ("/api/v1/", "/v1/")
