"""One client wrapper for OpenAI and Gemini (`client`): keys from the environment (`keys`), retries, response cache,
structured output (`output`). Import the modules themselves: this package stays empty so that reading a key
(`keys`, on every command line) does not load the clients."""
