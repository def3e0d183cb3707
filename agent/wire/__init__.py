"""Sans-IO codecs: bytes or XML in, typed frozen dataclasses out, and back. No sockets, files or clock here."""
