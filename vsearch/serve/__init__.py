"""Serving: the Gradio page, the REST API, what every door shares to stay bounded, reloads and
shoppers' feedback."""
