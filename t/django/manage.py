#!/usr/bin/python3
"""Django's command-line utility for the test application (t/lib/Throttle/Django.pm runs it)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "throttleapp.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
