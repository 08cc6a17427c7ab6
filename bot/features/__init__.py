"""Feature routers: each module maps its webhook events to jobs with its own Router."""
