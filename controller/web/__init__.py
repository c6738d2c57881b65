"""The web dashboard: the fleet live in a browser (shoal serve --web, shoal up)."""
