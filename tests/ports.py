"""A free TCP port for the master of a 2-process gloo test (port 0 hangs torchrun's static rendezvous)."""
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
