"""The API's routers, one per concern; ``ragserve.serving.api.app.create_app`` includes each."""
