"""Sans-I/O SIP for umprobe: OPTIONS builder, stream parser with size caps, message values, response matching.

Nothing in this package performs I/O, reads a clock or imports trio/socket/ssl (a test enforces it):
bytes go in, values come out. Randomness comes from `secrets` through an injectable callable.
"""

from umprobe.sip.builder import BRANCH_MAGIC, DEFAULT_USER_AGENT, OptionsRequest, build_options, format_host
from umprobe.sip.errors import ERROR_CODES, ErrorCode, LocalProtocolError, RemoteProtocolError, SipError
from umprobe.sip.message import (
    CSEQ_MAX,
    RETRY_AFTER_MAX,
    Headers,
    Request,
    Response,
    Via,
    build_response,
    canonical_name,
    parse_cseq,
    parse_header_params,
    parse_retry_after,
    parse_via,
    same_host,
    split_header_list,
)
from umprobe.sip.parser import NEED_DATA, Event, StreamParser
from umprobe.sip.transaction import (
    DEFAULT_ACCEPT,
    MAX_MISMATCH_REASONS,
    ClientTransaction,
    is_healthy,
    parse_accept_status,
)

__all__ = [
    "BRANCH_MAGIC",
    "CSEQ_MAX",
    "DEFAULT_ACCEPT",
    "DEFAULT_USER_AGENT",
    "ERROR_CODES",
    "MAX_MISMATCH_REASONS",
    "NEED_DATA",
    "RETRY_AFTER_MAX",
    "ClientTransaction",
    "ErrorCode",
    "Event",
    "Headers",
    "LocalProtocolError",
    "OptionsRequest",
    "RemoteProtocolError",
    "Request",
    "Response",
    "SipError",
    "StreamParser",
    "Via",
    "build_options",
    "build_response",
    "canonical_name",
    "format_host",
    "is_healthy",
    "parse_accept_status",
    "parse_cseq",
    "parse_header_params",
    "parse_retry_after",
    "parse_via",
    "same_host",
    "split_header_list",
]
