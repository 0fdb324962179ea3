"""The long-running agent (`mailpacer run`): polls the ledger, sends queued campaigns."""
