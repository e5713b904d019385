"""One JSON error shape for every API failure: {"success": false, "message": ..., ["errors": ...]}."""

from rest_framework.views import exception_handler


def api_exception_handler(exc, context):
    response = exception_handler(exc, context)
    if response is None:
        return None
    data = response.data
    body = {"success": False}
    if isinstance(data, dict) and set(data) == {"detail"}:
        body["message"] = str(data["detail"])
    else:
        body["message"] = "Invalid input."
        body["errors"] = data
    response.data = body
    return response
