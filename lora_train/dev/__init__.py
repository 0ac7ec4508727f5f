"""Development tooling, never imported by the product at run time (only the `demo` command, the tests and the
benches use it): the pinned ComfyUI test-host builder (`host_builder`), a ComfyUI server driver (`server`), a
loopback HTTP server with injectable faults (`http_server`), seeded tiny models ComfyUI detects (`tiny_models`,
`tiny_clip`), synthetic style datasets (`synthetic`) and the API-format graphs the demo and tests run (`workflows`)."""
