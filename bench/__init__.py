"""Benchmarks for chat_app against a plain Flask-SocketIO `message_queue=` baseline (issue 5)."""
