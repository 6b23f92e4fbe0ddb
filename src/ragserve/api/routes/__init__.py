"""The API's routers, one per concern; ``ragserve.api.app.create_app`` includes each."""
