"""The engine as a service: the wire protocol, the server on the workspace's Unix socket,
and the client apps use. The server imports engine.session; the client and the protocol
import engine.base (and the workspace, to open the engine's own)."""
