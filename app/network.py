"""Who is calling, as the app sees it: the address logic of the stack on display."""

import socket

from flask import Blueprint, jsonify, request

bp = Blueprint("network", __name__)

# TEST-NET-1 (RFC 5737): connecting a UDP socket picks the outward route and source address
# without sending a packet, and no real host has this address.
ROUTE_PROBE = ("192.0.2.1", 9)
NO_ROUTE_ADDRESS = "127.0.0.1"


def outward_address() -> str:
    """This host's address on its route outward, or 127.0.0.1 when it has no route."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(ROUTE_PROBE)
            return probe.getsockname()[0]
    except OSError:
        return NO_ROUTE_ADDRESS


@bp.get("/ip")
def ip():
    chain = request.headers.get("X-Forwarded-For", "")
    return jsonify(
        client_ip=request.remote_addr,
        forwarded_for=[hop.strip() for hop in chain.split(",") if hop.strip()],
        host_ip=outward_address(),
    )
