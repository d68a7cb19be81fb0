"""HTTP surfaces on top of the bridge: the admin API (`/api`), later the console and the softphone."""
