"""Event triggers that turn changes in the platform's services into asset events (Asset watchers)."""
