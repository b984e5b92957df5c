from rest_framework.authentication import SessionAuthentication


class SessionAuthenticationNoCsrf(SessionAuthentication):
    """DRF's session authentication without its CSRF check (test application only)."""

    def enforce_csrf(self, request):
        return
