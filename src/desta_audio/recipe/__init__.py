"""The small recipe: a multi-domain corpus from packaged sources (`desta recipe corpus`)."""
