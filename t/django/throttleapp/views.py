"""The test application's views. Every DRF view exists twice: under /api/ with DRF's own
throttles, and under /plain/ without any (for nginx's throttle module to limit)."""
from django.contrib.auth import authenticate, login, logout
from django.db import transaction
from django.db.models import F
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, ScopedRateThrottle, UserRateThrottle
from rest_framework.views import APIView

from .models import UserData

USER_THROTTLES = [AnonRateThrottle, UserRateThrottle]


def _user_id(request):
    return request.user.pk if request.user.is_authenticated else None


class LoginView(APIView):
    """POST username and password (form or JSON): 200 and a new session, or 400."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []

    def post(self, request):
        user = authenticate(
            request._request,
            username=request.data.get("username", ""),
            password=request.data.get("password", ""),
        )
        if user is None:
            return Response({"detail": "invalid credentials"}, status=status.HTTP_400_BAD_REQUEST)
        login(request._request, user)
        return Response({"user_id": user.pk, "username": user.get_username()})


class LoginScopeView(LoginView):
    """The login view under DRF's ScopedRateThrottle, scope "login" (per address when anonymous)."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"


class LogoutView(APIView):
    permission_classes = [AllowAny]
    throttle_classes = []

    def post(self, request):
        logout(request._request)
        return Response({"ok": True})


class ItemsView(APIView):
    """A public list: anonymous clients and users alike, AnonRateThrottle + UserRateThrottle."""

    permission_classes = [AllowAny]
    throttle_classes = USER_THROTTLES

    def get(self, request):
        return Response({"user_id": _user_id(request), "items": ["a", "b", "c"]})


class ReviewTodayView(APIView):
    """Per-user read: the user's id and counter, Cache-Control: private (and DRF's Vary: Accept)."""

    permission_classes = [IsAuthenticated]
    throttle_classes = USER_THROTTLES

    def get(self, request):
        data, _ = UserData.objects.get_or_create(user=request.user)
        response = Response({"user_id": request.user.pk, "counter": data.counter})
        response["Cache-Control"] = "private"
        return response


class ReviewWriteView(APIView):
    """Write: POST increments the user's counter (what the per-user read shows)."""

    permission_classes = [IsAuthenticated]
    throttle_classes = USER_THROTTLES

    def post(self, request):
        with transaction.atomic():
            UserData.objects.get_or_create(user=request.user)
            UserData.objects.filter(user=request.user).update(counter=F("counter") + 1)
            data = UserData.objects.get(user=request.user)
        return Response({"user_id": request.user.pk, "counter": data.counter})
