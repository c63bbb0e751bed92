"""trainer/sdscripts."""
