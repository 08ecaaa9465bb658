"""``python -m lorafarm.auth [KEY]``: a new key (or the given one) and the digest for the tenants file."""

import sys

from .keys import hash_key, new_key

key = sys.argv[1] if len(sys.argv) > 1 else new_key()
print(f"key:    {key}\ndigest: {hash_key(key)}")
