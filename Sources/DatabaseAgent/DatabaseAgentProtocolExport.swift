// The wire contract (messages, frame ids) lives in DatabaseAgentProtocol, shared with Storage's agent:// driver; the
// agent's users see it through this module as before.
@_exported import DatabaseAgentProtocol
