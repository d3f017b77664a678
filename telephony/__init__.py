"""Twilio telephony: the Media Streams WebSocket server, TwiML, signatures and REST call control."""
