# One chat node. The command is the Procfile's web line (tests/unit/test_deploy_files.py checks it).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PORT=5000
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY chat_app ./chat_app
COPY wsgi.py gunicorn.conf.py Procfile ./
RUN useradd --system --no-create-home chat
USER chat
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=4)"
CMD gunicorn -c gunicorn.conf.py -k geventwebsocket.gunicorn.workers.GeventWebSocketWorker -w 1 --bind 0.0.0.0:$PORT --no-control-socket wsgi:app
