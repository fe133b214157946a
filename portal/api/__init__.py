"""The REST API: token authentication, one error format, idempotent POSTs and the /api/v1/ router."""
