"""The report: one self-contained report.html of a twin's results (see :mod:`twin.report.html`)."""

from twin.report.html import NOT_RUN as NOT_RUN
from twin.report.html import ReportData as ReportData
from twin.report.html import build_report as build_report
from twin.report.html import key_figures as key_figures
from twin.report.html import write_report as write_report
