"""Tests for the sans-I/O SIP package umprobe.sip."""
