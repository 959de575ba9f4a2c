"""The product's backend in the loop: decision hooks (decisions.py: connect, join and send
asked over HTTP before they happen) and webhooks (webhooks.py: what happened, signed, sent
from the archive's outbox). Both sign as Standard Webhooks does (signing.py)."""
