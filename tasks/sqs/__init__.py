"""A message's way in and out of SQS: receive.py takes it in, settle.py ends it."""
