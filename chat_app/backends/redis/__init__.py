"""Redis behind the two interfaces (chat_app.backends.base): RedisBroker and RedisPresence
over the clients of one deployment. Nothing is imported here, so ChatEmitter can take the
send and control modules without the node's listener and publisher."""
