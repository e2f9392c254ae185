"""The pure core: policy, backoff, the message contract. Imports no IO library."""
