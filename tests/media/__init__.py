"""Tests for the sans-I/O media package umprobe.media."""
