"""Sans-I/O protocol, election and configuration logic: bytes and time in, decisions out."""
